"""A PyTorch Lightning captioning repository: the LightningModule wraps ``self.model = CaptionNet(...)``
(so the checkpoint's state_dict keys start with ``model.``) and saves its constructor arguments as
``hyper_parameters``.  CaptionNet has a two-layer ``nn.LSTM`` decoder (state (layers, B, D)), additive
tanh attention, a ``beta`` gate and a deep output layer L_o(E y + L_h h + L_z z) -- nothing the
built-in Show-Attend-Tell adapter can wire, so it comes with an adapter file (jetcap_adapter.py)."""
import torch
from torch import nn


class BahdanauAttention(nn.Module):
    def __init__(self, encoder_dim, hidden_dim, attention_dim):
        super().__init__()
        self.W = nn.Linear(encoder_dim, attention_dim)
        self.U = nn.Linear(hidden_dim, attention_dim)
        self.v = nn.Linear(attention_dim, 1)

    def forward(self, features, hidden):
        e = self.v(torch.tanh(self.W(features) + self.U(hidden).unsqueeze(1))).squeeze(2)
        alpha = torch.softmax(e, dim=1)
        return (features * alpha.unsqueeze(2)).sum(dim=1), alpha


class CaptionNet(nn.Module):
    def __init__(self, vocab_size, embed_dim=16, hidden_dim=32, attention_dim=24, num_layers=2, encoder_dim=32,
                 dropout=0.3):
        super().__init__()
        self.num_layers, self.hidden_dim = num_layers, hidden_dim
        self.encoder = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(16, encoder_dim, 3, stride=2, padding=1),
            nn.ReLU(), nn.Conv2d(encoder_dim, encoder_dim, 3, stride=2, padding=1), nn.ReLU())
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.attn = BahdanauAttention(encoder_dim, hidden_dim, attention_dim)
        self.beta = nn.Linear(hidden_dim, encoder_dim)
        self.rnn = nn.LSTM(embed_dim + encoder_dim, hidden_dim, num_layers=num_layers, batch_first=True,
                           dropout=dropout)
        self.init_h = nn.Linear(encoder_dim, hidden_dim * num_layers)
        self.init_c = nn.Linear(encoder_dim, hidden_dim * num_layers)
        self.L_h = nn.Linear(hidden_dim, embed_dim)
        self.L_z = nn.Linear(encoder_dim, embed_dim)
        self.L_o = nn.Linear(embed_dim, vocab_size)
        self.drop = nn.Dropout(dropout)

    def features(self, images):
        return self.encoder(images).flatten(2).transpose(1, 2)  # (B, P, C)

    def init_state(self, features):
        mean = features.mean(dim=1)
        shape = (features.size(0), self.num_layers, self.hidden_dim)
        h = self.init_h(mean).view(shape).transpose(0, 1).contiguous()
        c = self.init_c(mean).view(shape).transpose(0, 1).contiguous()
        return h, c  # (layers, B, D)

    def decode(self, word, h, c, features):
        embedded = self.embed(word)
        context, alpha = self.attn(features, h[-1])
        context = torch.sigmoid(self.beta(h[-1])) * context
        out, (h, c) = self.rnn(torch.cat([embedded, context], dim=1).unsqueeze(1), (h, c))
        logits = self.L_o(self.drop(embedded + self.L_h(out[:, 0]) + self.L_z(context)))
        return logits, h, c, alpha

    def forward(self, images, captions):
        """Teacher forcing: scores (B, L - 1, V) for captions (B, L) that start with <start>."""
        features = self.features(images)
        h, c = self.init_state(features)
        scores = []
        for t in range(captions.size(1) - 1):
            logits, h, c, _ = self.decode(captions[:, t], h, c, features)
            scores.append(logits)
        return torch.stack(scores, dim=1)

    @torch.no_grad()
    def generate(self, image, start_id, end_id, max_len=20):
        """The repository's greedy inference for one (3, H, W) image."""
        features = self.features(image[None])
        h, c = self.init_state(features)
        word, out = torch.tensor([start_id]), []
        for _ in range(max_len):
            logits, h, c, _ = self.decode(word, h, c, features)
            word = logits.argmax(dim=1)
            if int(word) == end_id:
                break
            out.append(int(word))
        return out
