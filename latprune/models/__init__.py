"""Model loading from spec strings and the built-in model definitions."""

from latprune.models.loading import (
    LoadedModel,
    apply_state_dict,
    load_model,
    load_state_dict_file,
    parse_input_shape,
)

__all__ = ["LoadedModel", "apply_state_dict", "load_model", "load_state_dict_file", "parse_input_shape"]
