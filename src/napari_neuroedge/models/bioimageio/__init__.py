"""bioimage.io model packages: :mod:`.load` uses one as a model (models layer, below inference); :mod:`.export`
writes one, with test tensors made by the inference code, so it sits in the inference layer
(``tests/core/test_import_contract.py``). Nothing in the models layer imports :mod:`.export`.
"""
