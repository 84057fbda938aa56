"""The torch model definitions: the bi-encoder, the fusion ranker, the sequential
recommender and the GPU serving path. Training and conversion import them; serving runs
their exported ONNX graphs through `shoprank.core` instead.
"""
