"""Errors as users see them: one line, also for an error raised inside a traced function."""

from medkeras.errors import ConfigError, one_line


def test_an_error_from_inside_a_traced_function_is_its_own_message():
    import tensorflow as tf

    @tf.function
    def traced(x):
        raise ConfigError("images have 2 channels; the model takes 3")

    try:
        tf.data.Dataset.range(2).map(lambda x: traced(x))
    except ConfigError as exc:
        assert "in user code" in str(exc)  # as TensorFlow hands it back, with its frames
        assert one_line(exc) == "images have 2 channels; the model takes 3"
    else:
        raise AssertionError("the traced function did not raise")
    assert one_line(ValueError("first\nsecond")) == "first"
