"""Model loading from spec strings and the built-in model definitions."""

from latprune.models.loading import (
    LoadedModel,
    apply_state_dict,
    check_spec_named,
    default_input_shape,
    is_builtin_spec,
    load_model,
    load_state_dict_file,
    parse_input_shape,
    spec_family,
)

__all__ = ["LoadedModel", "apply_state_dict", "check_spec_named", "default_input_shape", "is_builtin_spec",
           "load_model", "load_state_dict_file", "parse_input_shape", "spec_family"]
