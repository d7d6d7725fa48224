"""A *wrong* rebuild of the tanh decoder: same class and tensor names, ReLU where the model has tanh
(what rebuilding a checkpoint onto a known layout does).  Its bundles must fail validation against
the real code."""
import torch
from torch import nn

from decoder import Attention as TanhAttention
from decoder import Decoder as TanhDecoder


class Attention(TanhAttention):
    def forward(self, img_features, hidden_state):
        att = torch.relu(self.W(img_features) + self.U(hidden_state).unsqueeze(1))
        alpha = self.softmax(self.v(att).squeeze(2))
        return (img_features * alpha.unsqueeze(2)).sum(1), alpha


class Decoder(TanhDecoder):
    def __init__(self, vocabulary_size, encoder_dim, tf=False, hidden=32, embed=16):
        super().__init__(vocabulary_size, encoder_dim, tf, hidden, embed)
        self.attention = Attention(encoder_dim, hidden)
