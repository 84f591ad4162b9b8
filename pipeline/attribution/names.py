"""The attribution methods the library offers, by name (no torch import: the params schema reads them)."""

ATTRIBUTION_METHODS = ("ig_zero", "ig_noise", "ig_blur", "saliency", "inputxgrad", "deeplift", "guided_backprop",
                       "occlusion", "smoothgrad", "gradcam", "guided_gradcam")
NEEDS_CONV_LAYER = ("gradcam", "guided_gradcam")  # they attribute through the last convolution's feature maps
NEEDS_HOOKS = ("deeplift", "guided_backprop", "guided_gradcam", "d_deeplift")  # captum hooks the activation modules
