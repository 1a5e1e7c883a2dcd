"""The published Caffe models: the file format (`proto`) and the layer mapping onto dlcore's networks (`mapping`)."""

from dlcore.caffe.mapping import caffe_plan, export_caffe, import_caffe
from dlcore.caffe.proto import caffemodel_layers, encode_caffemodel, read_caffemodel, write_caffemodel

__all__ = ["read_caffemodel", "caffemodel_layers", "encode_caffemodel", "write_caffemodel", "caffe_plan",
           "import_caffe", "export_caffe"]
