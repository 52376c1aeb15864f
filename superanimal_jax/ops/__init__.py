"""Box operations as pure, jittable functions: boxes, anchors, NMS, RoIAlign, float32 emulation."""
