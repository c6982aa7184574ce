"""Search: FAISS index build/save/load/query (index), searching embedded images (query), contact sheets (grid)."""
