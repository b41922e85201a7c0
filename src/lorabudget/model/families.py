"""Encoder families: what the same part of a layer is called in each, and how lorabudget's own heads sit on it.

A config names the layers to adapt by *role* (`query`, `ffn_in`, ...), which means the same on every family;
this table maps a role to the family's module name inside one encoder layer (BERT's `attention.self.query`,
DistilBERT's `attention.q_lin`, MPNet's `attention.attn.q`, ModernBERT's fused `attn.Wqkv`). A family is told
apart by its configuration's `model_type`. One entry per family; a new family is one entry plus a tiny model in
tests/test_families.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field

ROLES = {  # role -> what it is, as the error messages and `lorabudget config` say it
    "query": "attention query projection",
    "key": "attention key projection",
    "value": "attention value projection",
    "qkv": "fused query/key/value projection",
    "attention_output": "attention output projection",
    "ffn_in": "feed-forward input (up) projection",
    "ffn_out": "feed-forward output (down) projection",
}
SHORT = {"query": "q", "key": "k", "value": "v", "qkv": "qkv", "attention_output": "attn_out", "ffn_in": "ffn_in",
         "ffn_out": "ffn_out"}  # the planner's table columns

_BERT_ROLES = {"query": "attention.self.query", "key": "attention.self.key", "value": "attention.self.value",
               "attention_output": "attention.output.dense", "ffn_in": "intermediate.dense",
               "ffn_out": "output.dense"}


@dataclass(frozen=True)
class Family:
    name: str  # as people write it
    model_types: tuple[str, ...]
    roles: dict[str, str] = field(hash=False)  # role -> linear module inside one encoder layer
    # Where lorabudget's 'linear' and 'lowrank' heads go (head_modules.install_*): 'classifier' (the model's
    # classifier reads the token states: replaced whole), 'pooler' (BERT: the base model's pooler),
    # 'top_pooler' (DeBERTa: the pooler beside the classifier), 'prediction_head' (ModernBERT: its head after
    # its own pooling). None: only the family's own head ('default').
    head_style: str | None
    no_own_heads_why: str = ""

    def module(self, role: str) -> str | None:
        return self.roles.get(role)


FAMILIES: dict[str, Family] = {
    "bert": Family("BERT", ("bert",), _BERT_ROLES, "pooler"),
    "roberta": Family("RoBERTa / XLM-RoBERTa", ("roberta", "xlm-roberta", "camembert", "xlm-roberta-xl"),
                      _BERT_ROLES, "classifier"),
    "electra": Family("ELECTRA", ("electra",), _BERT_ROLES, "classifier"),
    "distilbert": Family(
        "DistilBERT", ("distilbert",),
        {"query": "attention.q_lin", "key": "attention.k_lin", "value": "attention.v_lin",
         "attention_output": "attention.out_lin", "ffn_in": "ffn.lin1", "ffn_out": "ffn.lin2"}, None,
        "DistilBERT's classifier takes the first token and applies its own ReLU inside the model's forward, so "
        "no other head can stand in for it"),
    "deberta-v2": Family(
        "DeBERTa-v2/v3", ("deberta-v2",),
        {"query": "attention.self.query_proj", "key": "attention.self.key_proj",
         "value": "attention.self.value_proj", "attention_output": "attention.output.dense",
         "ffn_in": "intermediate.dense", "ffn_out": "output.dense"}, "top_pooler"),
    "mpnet": Family(
        "MPNet", ("mpnet",),
        {"query": "attention.attn.q", "key": "attention.attn.k", "value": "attention.attn.v",
         "attention_output": "attention.attn.o", "ffn_in": "intermediate.dense", "ffn_out": "output.dense"},
        "classifier"),
    "modernbert": Family(
        "ModernBERT", ("modernbert",),
        {"qkv": "attn.Wqkv", "attention_output": "attn.Wo", "ffn_in": "mlp.Wi", "ffn_out": "mlp.Wo"},
        "prediction_head"),
}
_BY_MODEL_TYPE = {t: key for key, fam in FAMILIES.items() for t in fam.model_types}


def family_key(model_type: str) -> str:
    """The FAMILIES key of a configuration's `model_type`; an unknown type is its own key (exact module names
    and the model's own head still work on it)."""
    return _BY_MODEL_TYPE.get(model_type, model_type)


def family_of(model_type: str) -> Family | None:
    return FAMILIES.get(family_key(model_type))


def role_module(role: str, model_type: str) -> str:
    """The module a role names on this family, or a ValueError that says what the family offers instead."""
    family = family_of(model_type)
    if family is None:
        raise ValueError(f"roles such as {role!r} are known for {', '.join(f.name for f in FAMILIES.values())}, "
                         f"not {model_type!r}: name the modules exactly")
    module = family.module(role)
    if module is None:
        fused = " (its attention has one fused query/key/value module: use 'qkv')" if "qkv" in family.roles else ""
        raise ValueError(f"{family.name} has no {ROLES[role]} of its own{fused}; roles it offers: "
                         f"{', '.join(family.roles)}")
    return module
