"""mmbeit.checkpoint.state: the one unwrap rule and the one checked load."""
import pytest
import torch
import torch.nn as nn

from mmbeit.checkpoint import (
    CheckpointError,
    CheckpointMismatchError,
    load_state_dict_checked,
    note_adapted,
    take_prefix,
    unwrap_state_dict,
)


def test_unwrap_descends_containers_and_strips_ddp_prefixes():
    w = torch.ones(2)
    cases = [
        ({'w': w}, [], ''),
        ({'meta': {}, 'state_dict': {'w': w}}, ['state_dict'], ''),
        ({'model': {'module.w': w}}, ['model'], 'module.'),
        ({'module': {'state_dict': {'module.module.w': w}}}, ['module', 'state_dict'],
         'module.module.'),
    ]
    for obj, containers, prefix in cases:
        sd, got_containers, got_prefix = unwrap_state_dict(obj)
        assert list(sd) == ['w'] and sd['w'] is w
        assert (got_containers, got_prefix) == (containers, prefix)
    # a prefix only some keys carry is kept
    assert list(unwrap_state_dict({'module.a': w, 'b': w})[0]) == ['module.a', 'b']
    with pytest.raises(CheckpointError, match=r"entries \[epoch\] are not tensors .*"
                                              r"\['state_dict'\]"):
        unwrap_state_dict({'state_dict': {'w': w, 'epoch': 3}})
    with pytest.raises(CheckpointError, match='got list'):
        unwrap_state_dict([w])


def test_take_prefix():
    sd = {'backbone.a': 1, 'backbone.b.c': 2, 'head.a': 3}
    assert take_prefix(sd, 'backbone.') == {'a': 1, 'b.c': 2}
    assert take_prefix(sd, 'neck.') == {}


class _Net(nn.Module):
    def __init__(self, width=3):
        super().__init__()
        self.body = nn.Linear(2, width)
        self.norm = nn.LayerNorm(width)
        self.register_buffer('steps', torch.zeros(()), persistent=True)
        self.register_buffer('cache', torch.zeros(4), persistent=False)


def test_checked_load_reports_each_kind_of_problem_and_copies_no_wrong_shape():
    src, dst = _Net(), _Net()
    nn.init.normal_(src.body.weight)
    sd = dict(src.state_dict())
    sd['body.bias'] = torch.zeros(5)  # wrong shape
    del sd['norm.bias']  # missing
    sd['extra.weight'] = torch.ones(1)  # unexpected
    before = dst.body.bias.clone()
    with pytest.raises(CheckpointMismatchError) as info:
        load_state_dict_checked(dst, sd, source="'x.pth'", target='Net')
    report = info.value.report
    assert report.missing == ['norm.bias']
    assert report.unexpected == ['extra.weight']
    assert report.mismatched == [('body.bias', (5, ), (3, ))]
    assert str(info.value).splitlines() == [
        "'x.pth' does not fit Net:",
        '  1 missing (in the model, not in the file): [norm.bias]',
        '  1 unexpected (in the file, not in the model): [extra.weight]',
        '  1 of another shape: [body.bias [5] in the file, [3] in the model]']
    assert torch.equal(dst.body.bias, before)  # the wrongly shaped tensor was not copied
    assert 'body.bias' in sd and sd['body.bias'].shape == (5, )  # the caller's dict is kept


def test_fresh_ok_patterns_and_the_report():
    src, dst = _Net(), _Net()
    sd = {k: v for k, v in src.state_dict().items() if not k.startswith('norm.')}
    with pytest.raises(CheckpointMismatchError, match=r'2 missing .*\[norm\.weight, norm\.bias\]'):
        load_state_dict_checked(dst, sd, source='f')
    for pattern in ('norm.', 'norm.*'):
        report = load_state_dict_checked(dst, sd, source='f', fresh_ok={pattern: 'trains'},
                                         log=False)
        assert report.ok and report.fresh == [('norm.weight', 'trains'), ('norm.bias', 'trains')]
        assert sorted(report.loaded) == ['body.bias', 'body.weight', 'steps']
    # 'norm' (no dot) names one key exactly, not a prefix
    with pytest.raises(CheckpointMismatchError):
        load_state_dict_checked(dst, sd, source='f', fresh_ok={'norm': 'x'})
    assert not load_state_dict_checked(dst, sd, source='f', strict=False, log=False).ok


class _Adapting(_Net):
    """A model whose load hook renames an old key, as BEiTViT's resizes tables."""

    def _load_from_state_dict(self, state_dict, prefix, *args):
        old = prefix + 'old_norm.weight'
        if old in state_dict:
            state_dict[prefix + 'norm.weight'] = state_dict.pop(old)
            note_adapted(old, 'renamed to norm.weight')
        super()._load_from_state_dict(state_dict, prefix, *args)


def test_load_hooks_run_and_their_notes_go_into_the_report():
    sd = dict(_Net().state_dict())
    sd['old_norm.weight'] = sd.pop('norm.weight') * 2
    holder = nn.Module()
    holder.child = _Adapting()
    report = load_state_dict_checked(holder, {f'child.{k}': v for k, v in sd.items()},
                                     source='f', log=False)
    assert report.adapted == [('child.old_norm.weight', 'renamed to norm.weight')]
    assert torch.equal(holder.child.norm.weight, sd['old_norm.weight'])
    assert 'adapted  child.old_norm.weight: renamed to norm.weight' in report.table()
