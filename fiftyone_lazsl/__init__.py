"""fiftyone-lazsl."""
