"""Its decoder: attention with W (features), U (hidden), v and tanh; init_h/init_c followed by tanh in
get_init_lstm_state(); a sigmoid f_beta gate; an LSTMCell called ``lstm``; ``deep_output``.  In eval
mode its forward feeds back its own argmax (it is also its inference)."""
import torch
from torch import nn


class Attention(nn.Module):
    def __init__(self, encoder_dim, hidden=32, att_dim=24):
        super().__init__()
        self.U = nn.Linear(hidden, att_dim)
        self.W = nn.Linear(encoder_dim, att_dim)
        self.v = nn.Linear(att_dim, 1)
        self.tanh = nn.Tanh()
        self.softmax = nn.Softmax(1)

    def forward(self, img_features, hidden_state):
        U_h = self.U(hidden_state).unsqueeze(1)
        W_s = self.W(img_features)
        att = self.tanh(W_s + U_h)
        e = self.v(att).squeeze(2)
        alpha = self.softmax(e)
        context = (img_features * alpha.unsqueeze(2)).sum(1)
        return context, alpha


class Decoder(nn.Module):
    def __init__(self, vocabulary_size, encoder_dim, tf=False, hidden=32, embed=16):
        super().__init__()
        self.use_tf = tf
        self.vocabulary_size = vocabulary_size
        self.encoder_dim = encoder_dim
        self.init_h = nn.Linear(encoder_dim, hidden)
        self.init_c = nn.Linear(encoder_dim, hidden)
        self.tanh = nn.Tanh()
        self.f_beta = nn.Linear(hidden, encoder_dim)
        self.sigmoid = nn.Sigmoid()
        self.deep_output = nn.Linear(hidden, vocabulary_size)
        self.dropout = nn.Dropout()
        self.attention = Attention(encoder_dim, hidden)
        self.embedding = nn.Embedding(vocabulary_size, embed)
        self.lstm = nn.LSTMCell(embed + encoder_dim, hidden)

    def get_init_lstm_state(self, img_features):
        avg_features = img_features.mean(dim=1)
        c = self.tanh(self.init_c(avg_features))
        h = self.tanh(self.init_h(avg_features))
        return h, c

    def forward(self, img_features, captions):
        batch_size = img_features.size(0)
        h, c = self.get_init_lstm_state(img_features)
        max_timespan = captions.size(1) - 1
        prev_words = captions[:, :1]
        embedding = self.embedding(captions) if self.training and self.use_tf else self.embedding(prev_words)
        preds = torch.zeros(batch_size, max_timespan, self.vocabulary_size)
        alphas = torch.zeros(batch_size, max_timespan, img_features.size(1))
        for t in range(max_timespan):
            context, alpha = self.attention(img_features, h)
            gated_context = self.sigmoid(self.f_beta(h)) * context
            if self.use_tf and self.training:
                lstm_input = torch.cat((embedding[:, t], gated_context), dim=1)
            else:
                embedding = embedding.squeeze(1) if embedding.dim() == 3 else embedding
                lstm_input = torch.cat((embedding, gated_context), dim=1)
            h, c = self.lstm(lstm_input, (h, c))
            output = self.deep_output(self.dropout(h))
            preds[:, t] = output
            alphas[:, t] = alpha
            if not self.training or not self.use_tf:
                embedding = self.embedding(output.max(1)[1].reshape(batch_size, 1))
        return preds, alphas

    @torch.no_grad()
    def caption(self, img_features, start_id, end_id, max_len=20):
        """The repository's greedy inference for one image: token ids without <start>/<end>."""
        prev_words = torch.full((1, 1), start_id, dtype=torch.long)
        h, c = self.get_init_lstm_state(img_features)
        out = []
        for _ in range(max_len):
            embedding = self.embedding(prev_words).squeeze(1)
            context, alpha = self.attention(img_features, h)
            gated_context = self.sigmoid(self.f_beta(h)) * context
            h, c = self.lstm(torch.cat([embedding, gated_context], dim=1), (h, c))
            word = int(self.deep_output(h).argmax(1))
            if word == end_id:
                break
            out.append(word)
            prev_words = torch.full((1, 1), word, dtype=torch.long)
        return out
