# The text on the dark building is faint; equalise the luminance locally (CLAHE).
import cv2

img = cv2.imread(image_path)
lab = cv2.cvtColor(img, cv2.COLOR_BGR2LAB)
l, a, b = cv2.split(lab)
clahe = cv2.createCLAHE(clipLimit=3.0, tileGridSize=(8, 8))
enhanced = cv2.cvtColor(cv2.merge((clahe.apply(l), a, b)), cv2.COLOR_LAB2BGR)
path = "/mnt/data/temp_processed_images/street_contrast.jpg"
cv2.imwrite(path, enhanced)
print(path)
