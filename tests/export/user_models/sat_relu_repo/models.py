"""A Show-Attend-Tell tutorial repository: CNN encoder pooled to 14x14, ReLU additive attention with
encoder_att/decoder_att/full_att, an LSTMCell ``decode_step``, a sigmoid ``f_beta`` gate, ``fc`` output;
checkpoints pickle the whole encoder and decoder modules (``torch.save({'encoder': encoder, ...})``).
The real tutorial uses a ResNet-101 trunk; a small trunk keeps the tests fast, the pooling is the same.
"""
import torch
from torch import nn


class Encoder(nn.Module):
    def __init__(self, encoded_image_size=14):
        super().__init__()
        self.enc_image_size = encoded_image_size
        self.resnet = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(inplace=True),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
            nn.Conv2d(32, 48, 3, stride=2, padding=1), nn.ReLU(inplace=True))
        self.adaptive_pool = nn.AdaptiveAvgPool2d((encoded_image_size, encoded_image_size))

    def forward(self, images):
        out = self.adaptive_pool(self.resnet(images))  # (B, 48, 14, 14)
        return out.permute(0, 2, 3, 1)  # (B, 14, 14, 48)


class Attention(nn.Module):
    def __init__(self, encoder_dim, decoder_dim, attention_dim):
        super().__init__()
        self.encoder_att = nn.Linear(encoder_dim, attention_dim)
        self.decoder_att = nn.Linear(decoder_dim, attention_dim)
        self.full_att = nn.Linear(attention_dim, 1)
        self.relu = nn.ReLU()
        self.softmax = nn.Softmax(dim=1)

    def forward(self, encoder_out, decoder_hidden):
        att1 = self.encoder_att(encoder_out)
        att2 = self.decoder_att(decoder_hidden)
        att = self.full_att(self.relu(att1 + att2.unsqueeze(1))).squeeze(2)
        alpha = self.softmax(att)
        return (encoder_out * alpha.unsqueeze(2)).sum(dim=1), alpha


class DecoderWithAttention(nn.Module):
    def __init__(self, attention_dim, embed_dim, decoder_dim, vocab_size, encoder_dim=48, dropout=0.5):
        super().__init__()
        self.encoder_dim, self.vocab_size = encoder_dim, vocab_size
        self.attention = Attention(encoder_dim, decoder_dim, attention_dim)
        self.embedding = nn.Embedding(vocab_size, embed_dim)
        self.dropout = nn.Dropout(p=dropout)
        self.decode_step = nn.LSTMCell(embed_dim + encoder_dim, decoder_dim, bias=True)
        self.init_h = nn.Linear(encoder_dim, decoder_dim)
        self.init_c = nn.Linear(encoder_dim, decoder_dim)
        self.f_beta = nn.Linear(decoder_dim, encoder_dim)
        self.sigmoid = nn.Sigmoid()
        self.fc = nn.Linear(decoder_dim, vocab_size)

    def init_hidden_state(self, encoder_out):
        mean_encoder_out = encoder_out.mean(dim=1)
        return self.init_h(mean_encoder_out), self.init_c(mean_encoder_out)

    def forward(self, encoder_out, encoded_captions, caption_lengths):
        batch_size = encoder_out.size(0)
        encoder_out = encoder_out.view(batch_size, -1, self.encoder_dim)
        caption_lengths, sort_ind = caption_lengths.squeeze(1).sort(dim=0, descending=True)
        encoder_out = encoder_out[sort_ind]
        encoded_captions = encoded_captions[sort_ind]
        embeddings = self.embedding(encoded_captions)
        h, c = self.init_hidden_state(encoder_out)
        decode_lengths = (caption_lengths - 1).tolist()
        predictions = torch.zeros(batch_size, max(decode_lengths), self.vocab_size)
        alphas = torch.zeros(batch_size, max(decode_lengths), encoder_out.size(1))
        for t in range(max(decode_lengths)):
            bt = sum([length > t for length in decode_lengths])
            awe, alpha = self.attention(encoder_out[:bt], h[:bt])
            awe = self.sigmoid(self.f_beta(h[:bt])) * awe
            h, c = self.decode_step(torch.cat([embeddings[:bt, t, :], awe], dim=1), (h[:bt], c[:bt]))
            predictions[:bt, t, :] = self.fc(self.dropout(h))
            alphas[:bt, t, :] = alpha
        return predictions, encoded_captions, decode_lengths, alphas, sort_ind


@torch.no_grad()
def caption_image_beam_search(encoder, decoder, image, word_map, beam_size=3, max_len=20):
    """The repository's own inference (caption.py), greedy when beam_size is 1: token ids without
    <start>/<end>."""
    k = beam_size
    encoder_out = encoder(image.unsqueeze(0))
    encoder_dim = encoder_out.size(3)
    encoder_out = encoder_out.view(1, -1, encoder_dim)
    num_pixels = encoder_out.size(1)
    encoder_out = encoder_out.expand(k, num_pixels, encoder_dim)
    k_prev_words = torch.LongTensor([[word_map["<start>"]]] * k)
    seqs = k_prev_words
    top_k_scores = torch.zeros(k, 1)
    complete_seqs, complete_seqs_scores = [], []
    step = 1
    h, c = decoder.init_hidden_state(encoder_out)
    while True:
        embeddings = decoder.embedding(k_prev_words).squeeze(1)
        awe, _ = decoder.attention(encoder_out, h)
        awe = decoder.sigmoid(decoder.f_beta(h)) * awe
        h, c = decoder.decode_step(torch.cat([embeddings, awe], dim=1), (h, c))
        scores = torch.log_softmax(decoder.fc(h), dim=1)
        scores = top_k_scores.expand_as(scores) + scores
        if step == 1:
            top_k_scores, top_k_words = scores[0].topk(k, 0, True, True)
        else:
            top_k_scores, top_k_words = scores.view(-1).topk(k, 0, True, True)
        prev_word_inds = torch.div(top_k_words, len(word_map), rounding_mode="floor")
        next_word_inds = top_k_words % len(word_map)
        seqs = torch.cat([seqs[prev_word_inds], next_word_inds.unsqueeze(1)], dim=1)
        incomplete = [i for i, w in enumerate(next_word_inds) if w != word_map["<end>"]]
        complete = list(set(range(len(next_word_inds))) - set(incomplete))
        if complete:
            complete_seqs.extend(seqs[complete].tolist())
            complete_seqs_scores.extend(top_k_scores[complete])
        k -= len(complete)
        if k == 0 or step >= max_len:
            break
        seqs = seqs[incomplete]
        h, c = h[prev_word_inds[incomplete]], c[prev_word_inds[incomplete]]
        encoder_out = encoder_out[prev_word_inds[incomplete]]
        top_k_scores = top_k_scores[incomplete].unsqueeze(1)
        k_prev_words = next_word_inds[incomplete].unsqueeze(1)
        step += 1
    if complete_seqs:
        best = complete_seqs[complete_seqs_scores.index(max(complete_seqs_scores))]
        return [w for w in best[1:] if w != word_map["<end>"]]
    return seqs[0].tolist()[1:]
