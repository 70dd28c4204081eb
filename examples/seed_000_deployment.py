"""Seed 000's "Model Deployment" snippet, as written, with only the import changed.

Run from this folder (it reads ./config/deployment_config.yaml, the seed's layout plus the
`model:` section that says which file to serve):

    cd examples && python seed_000_deployment.py
"""

from PIL import Image

from cvdeploy import Config, ModelServer
from cvdeploy.demo import sample_images

image_tensor = Image.open(sample_images("shapes_*")[0])

# Initialize configuration
config = Config()

# Initialize server
server = ModelServer(
    model_type="yolo",
    model_path=config.get_model_config()["weights_path"],
    **config.get_deployment_config(),
)

# Start server
server.start()

# Make predictions
response = server.predict(image_tensor)

print(f"serving at {server.url} with {server.workers} workers")
for detection in response.detections:
    print(detection)
server.stop()
