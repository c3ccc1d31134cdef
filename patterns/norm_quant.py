"""(post-grad, written below)"""
NAME = "norm_quant"
def apply(graph):
    return {}
