"""Data: named datasets, array files, input validation."""

from .datasets import Dataset, available_datasets, load_dataset, resolve_data_home
from .images import flatten_images, load_image_folder
from .io import atomic_save_npy, atomic_write_bytes, atomic_write_text, load_array
from .validation import check_features, check_images, check_labels, check_n_clusters

__all__ = ["Dataset", "available_datasets", "load_dataset", "resolve_data_home", "load_array",
           "atomic_write_text", "atomic_write_bytes", "atomic_save_npy", "check_features",
           "check_images", "check_labels", "check_n_clusters", "flatten_images",
           "load_image_folder"]
