"""Evaluation: image metrics against ground truth (`metrics`: PSNR, SSIM, LPIPS) and the
reprojection error of generated views (`reprojection`), the paper's Sec. 3.5 metrics."""
