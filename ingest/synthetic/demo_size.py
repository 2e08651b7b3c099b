"""The demo dataset's size, apart from its generator so the CLI can show it as a default without importing
the generator (``--help`` stays light)."""

#: The demo dataset's size: 8 classes x 10 patients x 4 magnifications x 3 images = 960 images. Many patients with
#: few images each: what a model learns from is patients (their staining and cell-size styles differ), so with 5
#: patients x 6 images a CPU-sized model learnt the patients and scored near chance on the held-out ones.
DEMO_PATIENTS_PER_CLASS = 10
DEMO_IMAGES_PER_MAGNIFICATION = 3
