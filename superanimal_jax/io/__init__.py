"""Files: videos, result files, images, atomic writes."""
