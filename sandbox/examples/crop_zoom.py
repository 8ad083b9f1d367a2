# The sign on the grey building is small; crop it with a margin and zoom in to read it.
import os

import cv2

img = cv2.imread(image_path)
h, w = img.shape[:2]
x1, y1, x2, y2 = 680, 500, 880, 600  # sign region plus a margin
crop = img[y1:y2, x1:x2]
zoomed = cv2.resize(crop, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC)
os.makedirs("/mnt/data/temp_processed_images", exist_ok=True)
processed_path = "/mnt/data/temp_processed_images/street_sign_zoom.jpg"
cv2.imwrite(processed_path, zoomed)
print(processed_path)
