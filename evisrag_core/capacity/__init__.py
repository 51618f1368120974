"""Capacity planning (`evisrag plan`): memory and time models of a GPU run, and the plan built from them."""
