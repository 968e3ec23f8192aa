"""Chapter 09's claims about lighter designs (untrained weights: time and size do not depend on training):

* cross-layer sharing (ALBERT) divides the layers' parameters by the depth but not the time (ratio about 1.0);
* half the layers is at least 1.6× faster (batch 32, sequence 128);
* a grouped FFN (g = 4) with a channel shuffle cuts the FFN's FLOPs 4× (the model's about 1.9×) and is faster,
  but by less than its FLOPs promise; the detail says why, from the FFN alone and its parts
  (:func:`minilib.experiments.ch09_architecture.grouped_ffn_breakdown`): the small per-group products run less
  efficiently than one large one, the GELU and bias still run on the whole hidden layer, and the shuffle copies it.
"""
import torch

from minilib.arch import build
from minilib.experiments.ch09_architecture import grouped_ffn_breakdown
from minilib.support.bench import Headline, compare, count_flops, param_count
from minilib.support.train import set_seed
from minilib.transformer import Encoder, TransformerConfig

BATCH, SEQ = 32, 128
BASE = TransformerConfig(vocab_size=1000, d_model=256, n_heads=4, n_layers=4, d_ff=1024, max_len=SEQ, dropout=0.0)


def headlines():
    set_seed(0)
    designs = {"base": Encoder(BASE), "shared": build("shared layers", BASE),
               "2 layers": build("fewer layers", BASE, n_layers=2), "grouped": build("grouped + shuffle", BASE, groups=4)}
    for model in designs.values():
        model.eval()
    input_ids = torch.randint(1, BASE.vocab_size, (BATCH, SEQ), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        timing = compare({name: (lambda m=m: m(input_ids)) for name, m in designs.items()},
                         baseline="base", warmup=2, repeats=10)
    layers = {name: param_count(m.layers) for name, m in designs.items()}
    flops = {name: count_flops(m, SEQ) for name, m in designs.items()}
    shape = f"batch {BATCH}, seq {SEQ}"
    parts = grouped_ffn_breakdown(BASE.d_model, BASE.d_ff, 4, BATCH * SEQ)
    ms = {name: t.median * 1e3 for name, t in parts.timings.items()}
    why = (f"FLOPs ×{flops['base'] / flops['grouped']:.2f} fewer; the FFN alone {parts.ratio('grouped FFN (g=4)'):.2f}× "
           f"faster (its products {ms['dense: the two matrix products']:.0f} → {ms['grouped: the two grouped products']:.0f} ms, "
           f"GELU {ms['GELU on the hidden layer (both)']:.0f} ms in both, shuffle +{ms['channel shuffle (grouped only)']:.0f} ms); "
           "attention, LayerNorm and embeddings are not grouped")
    return [
        Headline.about(f"ALBERT sharing: × faster ({shape}; about 1 = saves no time)", timing.ratio("shared"), 1.0, "×",
                       f"layer parameters {layers['base'] / 1e6:.2f}M → {layers['shared'] / 1e6:.2f}M"),
        Headline.at_least(f"half the layers: × faster ({shape})", timing.ratio("2 layers"), 1.6, "×",
                          f"FLOPs ×{flops['base'] / flops['2 layers']:.2f} fewer"),
        Headline.at_least(f"grouped FFN (g=4) + shuffle: × faster ({shape}; less than its FLOP ratio)",
                          timing.ratio("grouped"), 1.05, "×", why),
    ]
