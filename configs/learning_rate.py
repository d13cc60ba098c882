"""Learning rate and memorization speed across sizes (Tirumala et al. 2022, §3: T(N, tau) against the learning
rate is U-shaped, larger models memorize faster at every rate, and their sensitivity to it is smaller).

The memorization setup (configs/memorization.py) on half its training set, 100 synthetic documents (218 examples
of 64 tokens, 7 steps per epoch at batch 32), for 40 epochs; the whole training set and validation are evaluated
after every epoch. Sweep sizes, peak learning rates and seeds, then read T(N, tau) per (size, rate):

    memdyn sweep --config=configs/learning_rate.py --workdir=runs/learning_rate --parallel=2 \
        --sweep=model.size=nano,micro,tiny,small --sweep=optimizer.lr=0.0003,0.001,0.003,0.01 --sweep=seed=0,1,2
    memdyn analyze learning_rate --sweep=runs/learning_rate

The argument is the size preset (default ``tiny``).
"""

from memdyn.configs import memorization


def get_config(size: str = "tiny"):
    c = memorization.get_config(size)
    c.data.synthetic.num_train_docs = 100
    c.num_steps = 280  # 40 epochs of 7 steps
    return c
