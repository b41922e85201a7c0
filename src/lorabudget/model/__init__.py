"""The model stage: the pretrained encoder (`backbone`), the `HEADS` and `METHODS` tables (`heads`, `methods`),
where adapters go (`targets`), putting them on (`adapters`), the exact count (`budget`) and the whole build."""
