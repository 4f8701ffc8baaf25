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


def test_an_op_error_is_the_op_own_message():
    """TF's op errors (a store read short, in `fit`'s graph or eagerly) come as "Graph execution error:" or
    "{{function_node ...}}" with frames around the op's own message: that message is the line shown."""
    import tensorflow as tf

    ds = tf.data.Dataset.range(3).apply(tf.data.experimental.assert_cardinality(5))
    expected = "Input dataset was expected to contain 5 elements but contained only 3 elements."
    iterator = iter(ds)

    @tf.function
    def step():
        return next(iterator)

    errors = []
    for run in (lambda: [step() for _ in range(5)], lambda: list(ds)):
        try:
            run()
        except tf.errors.FailedPreconditionError as exc:
            errors.append(exc)
    assert len(errors) == 2 and "Graph execution error" in str(errors[0]) and "{{function_node" in str(errors[1])
    assert [one_line(exc) for exc in errors] == [expected, expected]
