"""The cluster topology's tests (issue 16): private clusters of real servers, started by the
tests themselves, in private folders and ports. Collected only with ``TL_CLUSTER_TESTS=1``
(``tests/conftest.py``): ``./dev test-cluster`` runs them all; ``./dev test`` runs the short
form CI can afford (``TL_CLUSTER_TESTS=short``, see ``dev``)."""
