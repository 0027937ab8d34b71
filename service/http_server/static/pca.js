// Principal component analysis of a few vectors, in the page: the words' vectors centred, their Gram
// matrix (n × n, small: n words ≪ the vector dimension) diagonalised by cyclic Jacobi rotations, and
// each word placed by its scores on the two leading components.

const SWEEPS = 100;
// Rotations stop once the off-diagonal part is this small next to the whole matrix (squared norms).
const TOLERANCE = 1e-26;

/** Eigenvalues and unit eigenvectors (columns) of a symmetric matrix, largest eigenvalue first. */
export function symmetricEigen(matrix) {
  const n = matrix.length;
  const a = matrix.map((row) => Float64Array.from(row));
  const v = Array.from({ length: n }, (_, i) => {
    const row = new Float64Array(n);
    row[i] = 1;
    return row;
  });
  const norm = a.reduce((sum, row) => sum + row.reduce((rowSum, value) => rowSum + value * value, 0), 0);
  for (let sweep = 0; sweep < SWEEPS; sweep++) {
    let off = 0;
    for (let p = 0; p < n; p++) for (let q = p + 1; q < n; q++) off += a[p][q] * a[p][q];
    if (off <= TOLERANCE * norm) break;
    for (let p = 0; p < n; p++) {
      for (let q = p + 1; q < n; q++) {
        if (Math.abs(a[p][q]) < 1e-300) continue;
        const theta = (a[q][q] - a[p][p]) / (2 * a[p][q]);
        const t = Math.sign(theta || 1) / (Math.abs(theta) + Math.sqrt(theta * theta + 1));
        const c = 1 / Math.sqrt(t * t + 1);
        const s = t * c;
        for (let k = 0; k < n; k++) {
          const akp = a[k][p];
          const akq = a[k][q];
          a[k][p] = c * akp - s * akq;
          a[k][q] = s * akp + c * akq;
        }
        for (let k = 0; k < n; k++) {
          const apk = a[p][k];
          const aqk = a[q][k];
          a[p][k] = c * apk - s * aqk;
          a[q][k] = s * apk + c * aqk;
        }
        for (let k = 0; k < n; k++) {
          const vkp = v[k][p];
          const vkq = v[k][q];
          v[k][p] = c * vkp - s * vkq;
          v[k][q] = s * vkp + c * vkq;
        }
      }
    }
  }
  const order = [...Array(n).keys()].sort((i, j) => a[j][j] - a[i][i]);
  return {
    values: order.map((i) => a[i][i]),
    vectors: order.map((i) => v.map((row) => row[i])),
  };
}

/**
 * The 2-D PCA projection of `vectors` (arrays of equal length): one [x, y] per vector, and the share
 * of the variance each axis keeps. Signs are fixed (the farthest point of each axis is positive) so the
 * same words always give the same picture.
 */
export function project2d(vectors) {
  const n = vectors.length;
  const dimension = vectors[0].length;
  const mean = new Float64Array(dimension);
  for (const vector of vectors) for (let d = 0; d < dimension; d++) mean[d] += vector[d] / n;
  const centred = vectors.map((vector) => Float64Array.from(vector, (value, d) => value - mean[d]));
  const gram = centred.map((x) => centred.map((y) => x.reduce((sum, value, d) => sum + value * y[d], 0)));
  const { values, vectors: components } = symmetricEigen(gram);
  const total = values.reduce((sum, value) => sum + Math.max(value, 0), 0) || 1;
  const axes = [0, 1].map((axis) => {
    const value = Math.max(values[axis] ?? 0, 0);
    // A Gram eigenvector u with eigenvalue λ gives the scores u·√λ on that principal component.
    const scores = (components[axis] ?? new Array(n).fill(0)).map((u) => u * Math.sqrt(value));
    const farthest = scores.reduce((best, score) => (Math.abs(score) > Math.abs(best) ? score : best), 0);
    return { scores: farthest < 0 ? scores.map((score) => -score) : scores, share: value / total };
  });
  return {
    points: axes[0].scores.map((x, i) => [x, axes[1].scores[i]]),
    explained: axes.map((axis) => axis.share),
  };
}

/** Cosine similarity of two vectors (0 when either is zero). */
export function cosine(x, y) {
  let dot = 0;
  let xx = 0;
  let yy = 0;
  for (let d = 0; d < x.length; d++) {
    dot += x[d] * y[d];
    xx += x[d] * x[d];
    yy += y[d] * y[d];
  }
  return xx && yy ? dot / Math.sqrt(xx * yy) : 0;
}
