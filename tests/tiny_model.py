"""A random tiny model as the text sampler sees it, shared by the sampler-level tests."""

import dataclasses

from cai_jax.tokenizer import ByteTokenizer, ChatTemplate


@dataclasses.dataclass(frozen=True)
class TinyModel:
  """What the text sampler needs from a LoadedModel."""

  graphdef: object
  params: dict
  tokenizer: object = ByteTokenizer()
  chat: ChatTemplate = ChatTemplate("chatml")
  source: str = "random:tiny"
