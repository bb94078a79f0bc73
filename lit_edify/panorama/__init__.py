"""360-degree panoramas (Edify Image Sec. 6): equirectangular geometry, view plan and assembly (plain torch),
the virtual camera used to train LDR2HDR."""
