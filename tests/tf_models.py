"""TF1 graph-mode models and their torch twins for the TensorFlow oracle tests.

TF 2.21 ships Keras 3, under which tf.compat.v1.layers and tf.compat.v1.nn.rnn_cell are gone
(they need the tf_keras package). The graphs here are built the way those layers build them:
variables by tf.compat.v1.get_variable under the layers' own names (`conv2d/kernel`,
`batch_normalization/moving_mean`, `rnn/basic_lstm_cell/kernel`, ...) and TensorFlow's own ops
(tf.nn.conv2d, depthwise_conv2d, conv2d_transpose, separable_conv2d, batch_normalization, and the
fused LSTMBlockCell kernel, gate order i,j,f,o with forget_bias added at run time). Checkpoints
are written by tf.compat.v1.train.Saver, so the files are exactly what a TF1 program writes.
"""
from __future__ import annotations

import numpy as np

BN_EPS = 1e-3


def cnn_params(rng) -> dict[str, np.ndarray]:
    def r(*shape, scale=0.3):
        return (rng.standard_normal(shape) * scale).astype(np.float32)
    return {
        "conv2d/kernel": r(3, 3, 3, 4), "conv2d/bias": r(4),
        "batch_normalization/gamma": 1 + r(4), "batch_normalization/beta": r(4),
        "batch_normalization/moving_mean": r(4), "batch_normalization/moving_variance": 0.5 + np.abs(r(4)),
        "depthwise_conv2d/depthwise_kernel": r(3, 3, 4, 2), "depthwise_conv2d/bias": r(8),
        "conv2d_transpose/kernel": r(3, 3, 5, 8), "conv2d_transpose/bias": r(5),
        "separable_conv2d/depthwise_kernel": r(3, 3, 5, 2), "separable_conv2d/pointwise_kernel": r(1, 1, 10, 6),
        "separable_conv2d/bias": r(6),
        "dense/kernel": r(6, 7), "dense/bias": r(7),
    }


def tf1_cnn(tf, params: dict):
    """conv2d SAME -> batch_norm -> relu -> depthwise (m=2) -> conv2d_transpose k3 s2 SAME ->
    separable conv -> global mean -> dense. Returns (graph, input placeholder NHWC, output)."""
    g = tf.Graph()
    with g.as_default():
        def var(name):
            return tf.compat.v1.get_variable(name, initializer=params[name])
        x = tf.compat.v1.placeholder(tf.float32, [None, 8, 8, 3], name="x")
        h = tf.nn.conv2d(x, var("conv2d/kernel"), 1, "SAME") + var("conv2d/bias")
        h = tf.nn.batch_normalization(h, var("batch_normalization/moving_mean"),
                                      var("batch_normalization/moving_variance"), var("batch_normalization/beta"),
                                      var("batch_normalization/gamma"), BN_EPS)
        h = tf.nn.relu(h)
        h = tf.nn.depthwise_conv2d(h, var("depthwise_conv2d/depthwise_kernel"), [1, 1, 1, 1], "SAME")
        h = h + var("depthwise_conv2d/bias")
        h = tf.nn.conv2d_transpose(h, var("conv2d_transpose/kernel"), tf.stack([tf.shape(x)[0], 16, 16, 5]),
                                   2, "SAME") + var("conv2d_transpose/bias")
        h = tf.nn.separable_conv2d(h, var("separable_conv2d/depthwise_kernel"),
                                   var("separable_conv2d/pointwise_kernel"), [1, 1, 1, 1], "SAME")
        h = h + var("separable_conv2d/bias")
        h = tf.reduce_mean(h, axis=[1, 2])
        y = tf.matmul(h, var("dense/kernel")) + var("dense/bias")
    return g, x, y


def torch_cnn(torch, eps: float = BN_EPS):
    nn = torch.nn

    class Separable(nn.Module):
        def __init__(self, c, m, out):
            super().__init__()
            self.depthwise = nn.Conv2d(c, c * m, 3, padding=1, groups=c, bias=False)
            self.pointwise = nn.Conv2d(c * m, out, 1)

        def forward(self, x):
            return self.pointwise(self.depthwise(x))

    class CNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv2d = nn.Conv2d(3, 4, 3, padding=1)
            self.batch_normalization = nn.BatchNorm2d(4, eps=eps)
            self.depthwise_conv2d = nn.Conv2d(4, 8, 3, padding=1, groups=4)
            # TF SAME for k3 s2 pads the forward conv (0 top, 1 bottom): torch's padding=0 then
            # dropping the last row/column gives the same adjoint.
            self.conv2d_transpose = nn.ConvTranspose2d(8, 5, 3, stride=2, padding=0)
            self.separable_conv2d = Separable(5, 2, 6)
            self.dense = nn.Linear(6, 7)

        def forward(self, x):
            h = torch.relu(self.batch_normalization(self.conv2d(x)))
            h = self.depthwise_conv2d(h)
            h = self.conv2d_transpose(h)[:, :, :16, :16]
            h = self.separable_conv2d(h)
            return self.dense(h.mean((2, 3)))
    return CNN()


LSTM_IN, LSTM_H, LSTM_T = 3, 5, 4


def lstm_params(rng) -> dict[str, np.ndarray]:
    return {"rnn/basic_lstm_cell/kernel": (rng.standard_normal((LSTM_IN + LSTM_H, 4 * LSTM_H)) * 0.4).astype(np.float32),
            "rnn/basic_lstm_cell/bias": (rng.standard_normal(4 * LSTM_H) * 0.4).astype(np.float32)}


def tf1_lstm(tf, params: dict, forget_bias: float = 1.0):
    """A BasicLSTMCell unrolled over LSTM_T steps with TF's fused LSTMBlockCell kernel."""
    g = tf.Graph()
    with g.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, LSTM_T, LSTM_IN], name="x")
        k = tf.compat.v1.get_variable("rnn/basic_lstm_cell/kernel", initializer=params["rnn/basic_lstm_cell/kernel"])
        b = tf.compat.v1.get_variable("rnn/basic_lstm_cell/bias", initializer=params["rnn/basic_lstm_cell/bias"])
        n = tf.shape(x)[0]
        h = c = tf.zeros(tf.stack([n, LSTM_H]))
        peep = tf.zeros([LSTM_H])
        outs = []
        for t in range(LSTM_T):
            _, c, _, _, _, _, h = tf.raw_ops.LSTMBlockCell(x=x[:, t], cs_prev=c, h_prev=h, w=k, wci=peep, wcf=peep,
                                                           wco=peep, b=b, forget_bias=forget_bias, cell_clip=-1.0,
                                                           use_peephole=False)
            outs.append(h)
        y = tf.stack(outs, axis=1)
    return g, x, y


def torch_lstm(torch):
    nn = torch.nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.Module()
            self.rnn.basic_lstm_cell = nn.LSTM(LSTM_IN, LSTM_H, batch_first=True)

        def forward(self, x):
            return self.rnn.basic_lstm_cell(x)[0]
    return Net()


def unet_params(rng) -> dict[str, np.ndarray]:
    def r(*shape):
        return (rng.standard_normal(shape) * 0.3).astype(np.float32)
    return {
        "unet/enc1/conv2d/kernel": r(3, 3, 3, 4), "unet/enc1/conv2d/bias": r(4),
        "unet/enc2/conv2d/kernel": r(3, 3, 4, 8), "unet/enc2/conv2d/bias": r(8),
        "unet/up1/conv2d_transpose/kernel": r(2, 2, 4, 8), "unet/up1/conv2d_transpose/bias": r(4),
        "unet/dec1/conv2d/kernel": r(3, 3, 8, 4), "unet/dec1/conv2d/bias": r(4),
        "unet/out/conv2d/kernel": r(1, 1, 4, 2), "unet/out/conv2d/bias": r(2),
    }


def tf1_unet(tf, params: dict):
    """Down conv, max-pool, conv, transposed-conv upsampling, skip concat, conv, 1x1 head (NHWC)."""
    g = tf.Graph()
    with g.as_default():
        def var(name):
            return tf.compat.v1.get_variable(name, initializer=params[name])

        def conv(h, scope):
            return tf.nn.conv2d(h, var(f"unet/{scope}/conv2d/kernel"), 1, "SAME") + var(f"unet/{scope}/conv2d/bias")
        x = tf.compat.v1.placeholder(tf.float32, [None, 16, 16, 3], name="x")
        e1 = tf.nn.relu(conv(x, "enc1"))
        e2 = tf.nn.relu(conv(tf.nn.max_pool2d(e1, 2, 2, "VALID"), "enc2"))
        u = tf.nn.conv2d_transpose(e2, var("unet/up1/conv2d_transpose/kernel"), tf.stack([tf.shape(x)[0], 16, 16, 4]),
                                   2, "SAME") + var("unet/up1/conv2d_transpose/bias")
        d = tf.nn.relu(conv(tf.concat([u, e1], axis=3), "dec1"))
        y = conv(d, "out")
    return g, x, y


def torch_unet(torch):
    nn = torch.nn

    def box(**mods):
        m = nn.Module()
        for k, v in mods.items():
            setattr(m, k, v)
        return m

    class UNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.unet = box(enc1=box(conv2d=nn.Conv2d(3, 4, 3, padding=1)), enc2=box(conv2d=nn.Conv2d(4, 8, 3, padding=1)),
                            up1=box(conv2d_transpose=nn.ConvTranspose2d(8, 4, 2, stride=2)),
                            dec1=box(conv2d=nn.Conv2d(8, 4, 3, padding=1)), out=box(conv2d=nn.Conv2d(4, 2, 1)))

        def forward(self, x):
            u = self.unet
            e1 = torch.relu(u.enc1.conv2d(x))
            e2 = torch.relu(u.enc2.conv2d(torch.nn.functional.max_pool2d(e1, 2)))
            up = u.up1.conv2d_transpose(e2)
            d = torch.relu(u.dec1.conv2d(torch.cat([up, e1], dim=1)))
            return u.out.conv2d(d)
    return UNet()


def run_tf(tf, graph, x, y, feed: np.ndarray, *, restore: str | None = None, save: str | None = None):
    """Evaluate y on `feed`; restore variables from a checkpoint first, or save them after."""
    with graph.as_default():
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session(graph=graph) as sess:
            if restore:
                saver.restore(sess, restore)
            else:
                sess.run(tf.compat.v1.global_variables_initializer())
            out = sess.run(y, {x: feed})
            if save:
                saver.save(sess, save)
    return out


def stack_params(rng, layers: int = 2) -> dict[str, np.ndarray]:
    out = {}
    for k in range(layers):
        n_in = LSTM_IN if k == 0 else LSTM_H
        scope = f"rnn/multi_rnn_cell/cell_{k}/basic_lstm_cell"
        out[f"{scope}/kernel"] = (rng.standard_normal((n_in + LSTM_H, 4 * LSTM_H)) * 0.4).astype(np.float32)
        out[f"{scope}/bias"] = (rng.standard_normal(4 * LSTM_H) * 0.4).astype(np.float32)
    return out


def tf1_lstm_stack(tf, params: dict, layers: int = 2):
    """A MultiRNNCell of BasicLSTMCells (TF1 names rnn/multi_rnn_cell/cell_k/basic_lstm_cell/...),
    each step through TF's fused LSTMBlockCell kernel."""
    g = tf.Graph()
    with g.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, LSTM_T, LSTM_IN], name="x")
        n = tf.shape(x)[0]
        peep = tf.zeros([LSTM_H])
        seq = [x[:, t] for t in range(LSTM_T)]
        for k in range(layers):
            scope = f"rnn/multi_rnn_cell/cell_{k}/basic_lstm_cell"
            w = tf.compat.v1.get_variable(f"{scope}/kernel", initializer=params[f"{scope}/kernel"])
            b = tf.compat.v1.get_variable(f"{scope}/bias", initializer=params[f"{scope}/bias"])
            h = c = tf.zeros(tf.stack([n, LSTM_H]))
            out = []
            for xt in seq:
                _, c, _, _, _, _, h = tf.raw_ops.LSTMBlockCell(x=xt, cs_prev=c, h_prev=h, w=w, wci=peep, wcf=peep,
                                                               wco=peep, b=b, forget_bias=1.0, cell_clip=-1.0,
                                                               use_peephole=False)
                out.append(h)
            seq = out
        y = tf.stack(seq, axis=1)
    return g, x, y


def torch_lstm_stack(torch, layers: int = 2):
    nn = torch.nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.Module()
            self.rnn.multi_rnn_cell = nn.LSTM(LSTM_IN, LSTM_H, num_layers=layers, batch_first=True)

        def forward(self, x):
            return self.rnn.multi_rnn_cell(x)[0]
    return Net()
