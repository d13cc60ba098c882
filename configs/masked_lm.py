"""Masked-LM memorization speed across sizes (Tirumala et al. 2022, §3: for a masked LM, T(N, tau) is not monotone
in size at low tau and becomes monotone above tau ≈ 0.6–0.7).

The learning-rate study's setup (configs/learning_rate.py: 100 synthetic documents, 218 examples of 64 tokens,
7 steps per epoch) with a masked LM: 15% of the tokens selected per update (80% <mask>, 10% random, 10% kept),
M scored at the <mask> positions; the training set is evaluated after every epoch with fixed masks. A masked LM
learns from 15% of the positions of each example per epoch, so it trains 80 epochs:

    memdyn sweep --config=configs/masked_lm.py --workdir=runs/masked_lm \
        --sweep=model.size=nano,micro,tiny,small --sweep=seed=0,1,2
    memdyn analyze memorization --sweep=runs/masked_lm --taus=0.1,0.15,0.2,0.3,0.5,0.7,0.9

docs/masked_lm/README.md adds the three smaller sizes at 3e-3 (``--sweep=optimizer.lr=0.003``).

The argument is the size preset (default ``tiny``).
"""

from memdyn.configs import learning_rate


def get_config(size: str = "tiny"):
    c = learning_rate.get_config(size)
    c.model.causal = False
    c.num_steps = 560  # 80 epochs of 7 steps
    return c
