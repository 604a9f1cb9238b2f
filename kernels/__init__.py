"""kernels: alternative backends of the reference VAE (one package per backend).

Backends exchange weights with the reference in its canonical form
(``vae_ref.params``: float32 arrays under names such as ``enc.fc1.weight``), so each can
start from exactly the reference's parameters and be checked against it.
"""
