"""The networks: the HRNet pose model and the Faster R-CNN detector (RPN, RoI heads)."""
