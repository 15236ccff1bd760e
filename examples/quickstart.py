"""The README's 30-second example: build, inspect, predict, save, load."""

import keras
import numpy as np

import keras_resnet

# A CIFAR ResNet-20 (He et al. 2016): 32x32x3 input, 10 classes, option-A shortcuts.
model = keras_resnet.build(depth=20, include_preprocessing=True)  # takes pixels in [0, 255]
print(model.name, f"{keras_resnet.count_params(model):,} parameters")  # 269,722

# An ImageNet ResNet-50 v1.5 backbone with feature maps for a detection head.
backbone = keras_resnet.build(depth=50, include_top=False, pyramid_outputs=True)
print({name: tuple(t.shape) for name, t in backbone.output.items()})

images = np.random.uniform(0, 255, (4, 32, 32, 3)).astype("float32")
probabilities = model.predict(images, verbose=0)
model.save("/tmp/resnet20.keras")
reloaded = keras.models.load_model("/tmp/resnet20.keras")
assert np.array_equal(reloaded.predict(images, verbose=0), probabilities)
print("saved, reloaded, same predictions")
