"""FiftyOne operators and panels of the fiftyone-lazsl plugin.

One module per operator family; each exposes ``OPERATORS`` (a list of
``foo.Operator`` / ``foo.Panel`` classes) that the plugin's root ``__init__``
registers. Operators only collect inputs and call :mod:`fiftyone_lazsl`.
"""
