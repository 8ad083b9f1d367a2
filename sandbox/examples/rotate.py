# The picture looks tilted by about 30 degrees; rotate it back with PIL, keeping every pixel.
from PIL import Image

img = Image.open(image_path)
upright = img.rotate(-30, expand=True, fillcolor=(255, 255, 255))
out = "/mnt/data/temp_processed_images/street_upright.png"
upright.save(out)
print(out)
