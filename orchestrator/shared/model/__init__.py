"""Building the model a rank trains and the control plane measures: architectures, sizes, inputs."""
