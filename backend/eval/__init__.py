"""`parallax eval`: quality of the model beside classical baselines on clips with ground truth.

metrics.py (PSNR, SSIM, masked variants), baselines.py (Telea inpainting, constant depth, OpenCV two-view
cameras), run.py (the driver and the command line). See docs/eval.md.
"""
