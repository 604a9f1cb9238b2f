"""The settings each ``vae-bench run --preset NAME`` stands for (flags given beside it win).

Apart from bench/run.py so that the command line lists them without loading what a run
needs (PyTorch, pandas, matplotlib: seconds, for ``vae-bench --help``).
"""

# How many timed windows per backend, and steps per window, unless told: a run's (its quick
# preset's: minutes in all) and a profile's (the closer look at one setting, longer windows).
RUN_WINDOWS, RUN_WINDOW_STEPS = 5, 30
PROFILE_WINDOWS, PROFILE_WINDOW_STEPS = 7, 50

PRESETS = {
    # The default of `nox -s bench`: the embedded digits, a few epochs, minutes on 2 cores.
    "quick": dict(
        dataset="mnist-5k", epochs=5, repeats=RUN_WINDOWS, steps=RUN_WINDOW_STEPS, iwae_k=100
    ),
    # The report's setting: 50 epochs on the full dataset, the literature's k where affordable.
    "full": dict(dataset="fashion-mnist", epochs=50, repeats=9, steps=50, iwae_k=1000),
    # A GPU machine: the fused CUDA backend beside PyTorch on CUDA, batch 128 to 4096. Noise
    # is drawn on the device (no host-to-device copy of it per step), windows are long
    # enough for sub-millisecond steps, and the data set is the embedded digits (it travels).
    "gpu": dict(
        dataset="mnist-5k",
        epochs=20,
        repeats=9,
        steps=200,
        iwae_k=100,
        backend_noise=True,
        backends=("torch-cuda", "torch-cuda-compile", "cupy", "cupy-nograph", "cupy-tf32"),
        batch_sizes=(128, 256, 512, 1024, 2048, 4096),
    ),
    # How each CPU backend's cost grows with its work: batch 32 to 4096 at z = 20, every
    # batch size timed interleaved; the ELBO is trained at the usual batch of 128 (first).
    "scaling": dict(
        dataset="fashion-mnist",
        latents=(20,),
        epochs=5,
        repeats=9,
        steps=20,
        iwae_k=100,
        backends=("torch", "torch-fused-adam", "torch-compile", "jax", "numba"),
        batch_sizes=(128, 32, 64, 256, 512, 1024, 2048, 4096),
    ),
}
