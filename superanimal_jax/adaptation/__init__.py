"""Video adaptation (SuperAnimal's remedy for a new video): pseudo-labels from a first pass, the
detector and then the pose model fine-tuned on them, a second pass."""
