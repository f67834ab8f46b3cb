import copy
import math

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from wsss.training import trainer
from wsss.training.trainer import NonFiniteLoss, WeightAverage, fit
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


def test_weight_average_equals_the_hand_written_ramped_lerp_bit_for_bit():
    """The values the hand-written average gave: a clone of the float state entries at the start,
    then after the n-th step a lerp towards the live ones by 1 - min(decay, (1 + n) / (10 + n))."""
    torch.manual_seed(0)
    model = Toy()
    live = {k: v for k, v in model.state_dict().items() if v.is_floating_point()}
    shadow = {k: v.clone() for k, v in live.items()}
    average = WeightAverage(model, decay=0.9)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    model.train()
    for n in range(1, 16):   # past the ramp: min(0.9, 11/20) .. 0.9
        opt.zero_grad()
        model(torch.randn(6, 3)).square().mean().backward()   # BatchNorm's running statistics move too
        opt.step()
        average.update()
        decay = min(0.9, (1 + n) / (10 + n))
        torch._foreach_lerp_(list(shadow.values()), list(live.values()), 1.0 - decay)
    last = model.head.weight.detach().clone()
    average.copy_to(model)
    got = model.state_dict()
    for k, v in shadow.items():
        assert torch.equal(got[k], v), k
    assert not torch.equal(got["head.weight"], last)   # an average, not the last step's weights
    assert model.backbone[1].num_batches_tracked.item() == 15   # the live count, not averaged


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
    from wsss.training.trainer import NonFiniteLoss

    def diverge(name, params):
        raise NonFiniteLoss("train classifier: loss is nan at epoch 1/2, step 3/3")

    monkeypatch.setattr(cli, "run_stage", diverge)
    assert cli.main(["train_classifier"]) == 2
    assert capsys.readouterr().err == "training stopped: train classifier: loss is nan at epoch 1/2, step 3/3\n"


def step_lrs(monkeypatch, cfg, n_batches):
    """The learning rates of both groups at each optimiser step of a fit on n_batches batches."""
    seen, build = [], trainer.make_optimizer

    def recording(model, cfg):
        opt = build(model, cfg)
        opt.register_step_pre_hook(lambda o, args, kwargs: seen.append([g["lr"] for g in o.param_groups]))
        return opt

    monkeypatch.setattr(trainer, "make_optimizer", recording)
    data = TensorDataset(torch.randn(4 * n_batches, 3), torch.randn(4 * n_batches, 1))
    fit(Toy(), DataLoader(data, batch_size=4), cfg, torch.device("cpu"),
        lambda m, b: torch.nn.functional.mse_loss(m(b[0]), b[1]), "schedule")
    return seen


@pytest.mark.parametrize("epochs, n_batches", [(1, 1), (2, 3), (3, 7)])
def test_poly_schedule_gives_the_closed_form_rate_at_every_step(monkeypatch, epochs, n_batches):
    # the hand-written schedule set base x (1 - step / total)^0.9 before each step
    cfg = {**CFG, "epochs": epochs, "lr": 0.003, "new_layer_lr_mult": 10.0, "ema_decay": 0.0}
    seen = step_lrs(monkeypatch, cfg, n_batches)
    total = epochs * n_batches
    assert len(seen) == total
    for step, lrs in enumerate(seen):
        for base, lr in zip([cfg["lr"], cfg["lr"] * cfg["new_layer_lr_mult"]], lrs):
            old = base * (1 - step / total) ** 0.9
            # PolynomialLR multiplies step ratios where the closed form took one power: float64
            # rounding apart, and equal as the float32 the optimiser applies
            assert lr == pytest.approx(old, rel=1e-13, abs=0) and np.float32(lr) == np.float32(old), (step, base)


def test_step_schedule_divides_by_ten_at_each_milestone_epoch(monkeypatch):
    cfg = {**CFG, "epochs": 4, "lr_schedule": "step", "lr_step_epochs": [0, 2, 3], "lr": 0.003,
           "new_layer_lr_mult": 10.0, "ema_decay": 0.0}
    seen = step_lrs(monkeypatch, cfg, 2)
    bases = (cfg["lr"], cfg["lr"] * cfg["new_layer_lr_mult"])
    old = [[base * 0.1 ** sum(epoch >= e for e in [0, 2, 3]) for base in bases] for epoch in range(4)]
    assert seen == [lrs for lrs in old for _ in range(2)]   # exact: the same expression
