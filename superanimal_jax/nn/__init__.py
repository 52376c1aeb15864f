"""Network building blocks in Flax: conv/BatchNorm layers, ResNet, HRNet, FPN."""
