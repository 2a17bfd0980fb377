"""Building the model a run trains: templates (templates/), the user's model file or Gist (user_models),
a pretrained Hugging Face model (pretrained), the task objects (tasks), how the kit calls a model (calling)
and the one entry, build_model (build).
Below the training package: nothing here imports Lightning."""
