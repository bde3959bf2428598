"""The registry every backbone adds itself to."""
from facekd.registry import Registry

#: name -> factory(embedding_size=..., input_size=..., **params) returning an ``nn.Module``
MODELS = Registry("model")
