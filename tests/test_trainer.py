import copy
import math

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from training.trainer import NonFiniteLoss, WeightAverage, fit
from tests.toys import Backbone

CFG = {"freeze_blocks": 0, "freeze_bn": True, "epochs": 2, "optimizer": "sgd", "lr_schedule": "poly",
       "lr_step_epochs": [1], "lr": 0.1, "new_layer_lr_mult": 1.0, "weight_decay": 0.0, "momentum": 0.0,
       "precision": "fp32"}


class Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = Backbone(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
        self.head = torch.nn.Linear(4, 1)

    def new_modules(self):
        return [self.head]

    def forward(self, x):
        return self.head(self.backbone(x))


def weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_weight_average_ramps_up_and_leaves_integer_buffers_alone():
    model = Toy()
    average = WeightAverage(model, decay=0.5)
    start = weights(model)
    with torch.no_grad():
        model.head.bias.add_(1.0)
        model.backbone[1].num_batches_tracked.fill_(7)
    average.update()  # step 1: decay min(0.5, 2/11): the new weights count 9/11
    average.copy_to(model)
    assert torch.allclose(model.head.bias, start["head.bias"] + 9 / 11)
    assert model.backbone[1].num_batches_tracked.item() == 7  # not averaged, not reset


def test_fit_with_ema_ends_with_the_moving_average_of_the_step_weights():
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(12, 3), torch.randn(12, 1))
    seen = []

    def batch_loss(model, batch):  # called before each step: the weights after the previous one
        seen.append(weights(model))
        x, y = batch
        return torch.nn.functional.mse_loss(model(x), y)

    torch.manual_seed(1)
    plain = Toy()
    initial = copy.deepcopy(plain)
    fit(plain, DataLoader(data, batch_size=4), {**CFG, "ema_decay": 0.0}, torch.device("cpu"), batch_loss, "plain")
    steps = seen[1:] + [weights(plain)]  # the weights after each of the 6 steps

    decay, expected = 0.8, weights(initial)
    for n, state in enumerate(steps, 1):
        d = min(decay, (1 + n) / (10 + n))
        expected = {k: v.lerp(state[k], 1 - d) if v.is_floating_point() else v for k, v in expected.items()}

    averaged = initial
    fit(averaged, DataLoader(data, batch_size=4), {**CFG, "ema_decay": decay}, torch.device("cpu"),
        lambda m, b: torch.nn.functional.mse_loss(m(b[0]), b[1]), "ema")
    got = weights(averaged)
    assert not torch.allclose(got["head.weight"], steps[-1]["head.weight"])  # not simply the last step
    for k, v in expected.items():
        assert torch.allclose(got[k], v, atol=1e-6), k


def test_non_finite_loss_stops_before_the_step_and_nothing_is_saved(tmp_path):
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(12, 3), torch.randn(12, 1))  # 3 steps an epoch
    calls = []

    def batch_loss(model, batch):
        calls.append(weights(model))
        loss = torch.nn.functional.mse_loss(model(batch[0]), batch[1])
        return loss * math.nan if len(calls) == 3 else loss

    model = Toy()
    checkpoint = tmp_path / "classifier.pt"

    def stage():  # as the stages do: save only after fit returns
        fit(model, DataLoader(data, batch_size=4), {**CFG, "ema_decay": 0.0}, torch.device("cpu"), batch_loss,
            "train classifier")
        torch.save(model.state_dict(), checkpoint)

    with pytest.raises(NonFiniteLoss, match=r"^train classifier: loss is nan at epoch 1/2, step 3/3 \(step 3 of 6\)"):
        stage()
    assert not checkpoint.exists()
    after = weights(model)
    assert all(torch.equal(after[k], calls[2][k]) for k in after)  # the NaN step changed nothing
    assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())


def test_cli_reports_a_diverged_run_on_one_line(monkeypatch, capsys):
    import tasks.__main__ as cli
    from training.trainer import NonFiniteLoss

    def diverge(name, params):
        raise NonFiniteLoss("train classifier: loss is nan at epoch 1/2, step 3/3")

    monkeypatch.setattr(cli, "run_stage", diverge)
    assert cli.main(["train_classifier"]) == 2
    assert capsys.readouterr().err == "training stopped: train classifier: loss is nan at epoch 1/2, step 3/3\n"
