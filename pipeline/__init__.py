"""cifar-kaggle-pipeline: fetch → prepare → train → select → predict for the CIFAR-10 Kaggle competition."""
