"""End-to-end analysis of videos and images, labeled videos and plots."""
