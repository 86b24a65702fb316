"""A text sample from a trained model, reproducible from a seed."""

import torch


@torch.no_grad()
def generate_sample(model, tokenizer, prompt, max_new_tokens=40, seed=0, top_k=50):
    """Sample `max_new_tokens` tokens after `prompt` (top-k sampling); returns prompt + continuation."""
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"] if prompt else None
    if ids is None or ids.shape[1] == 0:
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        ids = torch.tensor([[start]])
    ids = ids.to(model.device)
    was_training = model.training
    model.eval()
    torch.manual_seed(seed)
    output = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=True,
                            top_k=top_k, pad_token_id=tokenizer.pad_token_id)
    model.train(was_training)
    return tokenizer.decode(output[0], skip_special_tokens=True)
