import keras
import numpy as np
import pytest

from keras_resnet import schedules


def values(schedule, steps):
    return [float(keras.ops.convert_to_numpy(schedule(s))) for s in steps]


def test_warmup_piecewise_hand_computed():
    s = schedules.WarmupPiecewise([100, 200], [0.1, 0.01, 0.001], warmup_steps=10)
    # warmup: (step + 1) / 10 * 0.1
    assert values(s, [0, 4, 9]) == pytest.approx([0.01, 0.05, 0.1])
    assert values(s, [10, 99, 100, 199, 200, 10_000]) == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])


def test_he_et_al_schedule_divides_at_32k_and_48k():
    # 164 epochs of 390 steps, /10 at 50% and 75% of the run.
    s = schedules.make_schedule("piecewise", lr=0.1, steps_per_epoch=390, epochs=164,
                                boundaries=[0.5, 0.75], factor=0.1)
    assert s.boundaries == [31980, 47970]  # the paper's 32k and 48k iterations, to the epoch
    assert values(s, [0, 31979, 31980, 47970]) == pytest.approx([0.1, 0.1, 0.01, 0.001])


def test_warmup_cosine_hand_computed():
    s = schedules.WarmupCosine(0.4, total_steps=110, warmup_steps=10, alpha=0.0)
    assert values(s, [0, 9]) == pytest.approx([0.04, 0.4])
    assert values(s, [10, 60, 110, 500]) == pytest.approx([0.4, 0.2, 0.0, 0.0], abs=1e-7)


def test_one_cycle_hand_computed():
    s = schedules.OneCycle(0.2, total_steps=100, pct_start=0.25, div_factor=10, final_div=100)
    assert values(s, [0, 25, 100]) == pytest.approx([0.02, 0.2, 0.002], rel=1e-5)
    assert values(s, [12.5]) == pytest.approx([0.11])  # halfway up
    assert values(s, [62.5]) == pytest.approx([0.101])  # halfway down


@pytest.mark.parametrize("schedule", [
    schedules.WarmupPiecewise([5], [1.0, 0.1], 2),
    schedules.WarmupCosine(0.1, 50, 5, 0.01),
    schedules.OneCycle(0.1, 50, 0.3, 25, 1e4),
])
def test_schedules_serialize(schedule):
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert type(restored) is type(schedule) and restored.get_config() == schedule.get_config()
    np.testing.assert_allclose(values(restored, range(0, 60, 7)), values(schedule, range(0, 60, 7)))
    optimizer = keras.optimizers.SGD(schedule)
    config = keras.optimizers.SGD.from_config(optimizer.get_config()).get_config()["learning_rate"]
    assert config["registered_name"] == f"keras_resnet>{type(schedule).__name__}"


def test_linear_lr_scaling_and_errors():
    assert schedules.scale_lr(0.1, 1024, 256) == pytest.approx(0.4)
    assert schedules.scale_lr(0.1, 64, None) == 0.1
    with pytest.raises(ValueError, match="Unknown schedule 'step'"):
        schedules.make_schedule("step", lr=0.1, steps_per_epoch=1, epochs=1)
    with pytest.raises(ValueError, match="len\\(values\\)"):
        schedules.WarmupPiecewise([1, 2], [0.1])
