"""The control plane: the reconcile loop, the launchers and the trainers' credentials.

It moves jobs in the store towards what was asked (launch, stop, detect the dead). It
never calls the core: the core wakes the reconciler through a callback it is given.
"""
