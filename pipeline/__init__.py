"""cifar-kaggle-pipeline: the CIFAR-10 Kaggle competition's files to a submission CSV, in stages
check → fetch → prepare → train → select → distill → predict (dvc.yaml)."""
